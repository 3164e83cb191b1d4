"""Roll back: move `@champion` back to the version it replaced, or to a named one, and serve it.

    python -m pipeline.rollback --reason "more returns since v7"          # to the previous champion
    python -m pipeline.rollback --to 5 --reason "..."                      # to version 5
    make rollback REASON="..." [VERSION=5]

"Previous" is well defined: every promotion tags its version with the champion it replaced
(`replaced_version`), so repeated rollbacks walk back through the champions in order. The target
must be a version `register` promoted (its exports are in MLflow); its files are downloaded and
hash-checked before anything moves. Then, under register's lock (one promotion or rollback at a
time on a local store):

1. the champion is tagged `rolled_back=pending` with the reason, who (user@host), when and the
   target: from here on no `register` promotes its run again (`register --allow-rolled-back`
   lets it), whether or not this process lives on (step `rollback-marked`);
2. the alias moves to the target: the commit point (step `rollback-alias-moved`);
3. `rolled_back=true`; the target gets `restored_*` tags; the registered model says what
   happened in its `last_rollback` tag and its description;
4. the local BentoML store's `<serve.bento_model_name>:latest` becomes the target (imported,
   hash-checked), and champion.json records `decision: rolled_back`.

Killed before 2, the champion is unchanged and the next register or rollback marks the pending
tag `abandoned`; killed after, the next register completes the tags and syncs BentoML (so does
`make serve`). On a shared server (no lock), the champion is read again just before the move: if a
register moved it meanwhile, nothing moves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import socket
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline.core import paths
from pipeline.core.params import Params, load_params
from pipeline.promotion.bento_store import served_files, sync_bentoml_store
from pipeline.promotion.record import (
    ALIAS,
    BARRED,
    PROMOTION,
    REPLACED_VERSION,
    ROLLBACK_OWNER,
    ROLLED_BACK,
    ROLLED_BACK_KEYS,
    Decision,
    RegisterError,
)
from pipeline.promotion.registry import (
    champion_summary,
    current_champion,
    mark_restored,
    promotion_lock,
    repair,
    this_process,
)
from pipeline.promotion.steps import reached
from pipeline.shared.dataset import write_atomically
from pipeline.shared.logs import configure_logging
from pipeline.shared.tracking import (
    ModelFileError,
    TrackingUnavailable,
    check_server,
    tracking_access,
    tracking_uri,
)


def operator() -> str:
    """user@host of whoever runs this: what the tags say did it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def target_of(client: MlflowClient, champion: ModelVersion, to: str | None) -> ModelVersion:
    """The version to restore: `to`, or the one the champion replaced; refused unless register
    promoted it (its exports exist) and, when not named, unless it was not rolled back itself."""
    name = champion.name
    named = to is not None
    if not named:
        to = champion.tags.get(REPLACED_VERSION)
        if to in (None, "none"):
            why = "was the first champion" if to else "records no version it replaced"
            raise RegisterError(
                f"{name} v{champion.version} {why}: name the version to go back to with --to"
            )
    try:
        target = client.get_model_version(name, to)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise RegisterError(f"{name} has no version {to}") from None
    if target.version == champion.version:
        raise RegisterError(f"{name} v{to} is already the champion")
    if target.tags.get(PROMOTION) != "promoted":
        raise RegisterError(
            f"{name} v{to} was never champion (promotion: {target.tags.get(PROMOTION)}): only "
            "a version register promoted can be restored"
        )
    if target.tags.get(ROLLED_BACK) in BARRED and not named:
        raise RegisterError(
            f"{name} v{to}, the version v{champion.version} replaced, was rolled back itself "
            f"({target.tags.get('rolled_back_reason')}): name the version to go back to with --to"
        )
    return target


def roll_back(client: MlflowClient, params: Params, to: str | None, reason: str) -> Decision:
    """Move `@champion` to `to` (default: the version the champion replaced) under the promotion
    lock, say so in MLflow, sync the BentoML store; returns the record for champion.json."""
    name = params.mlflow.registered_model_name
    with (
        promotion_lock(tracking_uri()) as lock,
        tempfile.TemporaryDirectory(prefix="rollback-") as tmp,
    ):
        for done in repair(client, name, locked=lock is not None):
            # stdout, beside the result: what this rollback did
            print(f"rollback: settled {name} {done} (its register or rollback was killed)")
        leaving = current_champion(client, name)
        if leaving is None:
            raise RegisterError(f"{name} has no @{ALIAS} to roll back")
        target = target_of(client, leaving, to)
        served_files(champion_summary(client, target), Path(tmp) / "check")  # refused if broken
        by, at = operator(), dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        marks = dict(zip(ROLLED_BACK_KEYS, (reason, by, at, target.version), strict=True))
        marks |= {ROLLED_BACK: "pending", ROLLBACK_OWNER: this_process()}
        for key, value in marks.items():
            client.set_model_version_tag(name, leaving.version, key, value)
        reached("rollback-marked")
        now = current_champion(client, name)
        if now is None or now.version != leaving.version:
            client.set_model_version_tag(name, leaving.version, ROLLED_BACK, "abandoned")
            raise RegisterError(
                f"@{ALIAS} moved to v{now.version if now else '(none)'} while rolling back "
                f"v{leaving.version}: nothing was changed; run the rollback again if still needed"
            )
        client.set_registered_model_alias(name, ALIAS, target.version)
        reached("rollback-alias-moved")
        client.set_model_version_tag(name, leaving.version, ROLLED_BACK, "true")
        mark_restored(client, target, leaving.version, reason, by, at)
        said = f"v{leaving.version} -> v{target.version} by {by} at {at}: {reason}"
        client.set_registered_model_tag(name, "last_rollback", said)
        client.update_registered_model(
            name,
            description="Fashion-MNIST classifier trained by this project's DVC pipeline; "
            f"`@{ALIAS}` is the version `register` promoted or a rollback restored.\n\n"
            f"Rolled back: {said}.\n\n{target.description or ''}",
        )
        served = sync_bentoml_store(client, params, Path(tmp) / "sync")
        restored = champion_summary(client, client.get_model_version(name, target.version))
        return Decision(
            decision="rolled_back",
            reason=f"rolled back from version {leaving.version} to version {target.version} "
            f"by {by}: {reason}",
            chosen_by="rollback",
            candidate=None,
            champion=restored,
            previous_champion=champion_summary(client, leaving),
            champion_remeasured=None,
            pipeline_run=None,
            gate=params.register.model_dump(),
            parity=None,
            served=served,
            rollback={"from": leaving.version, "to": target.version, "reason": reason}
            | {"by": by, "at": at},
        )


def main() -> None:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", help="the version to restore (default: the one @champion replaced)")
    parser.add_argument("--reason", required=True, help="why: goes into MLflow's tags")
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    parser.add_argument("--out", type=Path, default=paths.CHAMPION)
    args = parser.parse_args()
    if not args.reason.strip():
        parser.error("--reason must say why (it is recorded in MLflow)")
    params = load_params(args.params)
    try:
        with tracking_access():
            uri = tracking_uri()
            check_server(uri)  # fails fast, naming it, when it does not answer
            mlflow.set_tracking_uri(uri)  # downloads (mlflow.artifacts) go there too
            record = roll_back(MlflowClient(), params, args.to, args.reason.strip())
    except (TrackingUnavailable, RegisterError, ModelFileError) as err:
        sys.exit(f"rollback failed: {err}")
    write_atomically(args.out, lambda tmp: tmp.write_text(record.to_json()))
    rollback = record.rollback
    print(
        f"rollback: {params.mlflow.registered_model_name} @{ALIAS} is version {rollback['to']} "
        f"again (was {rollback['from']}): {rollback['reason']}\n"
        f"rollback: the run of version {rollback['from']} is no candidate for register now "
        "(python -m pipeline.register --allow-rolled-back lets it be)\n"
        f"BentoML store serves: {record.served}"
    )


if __name__ == "__main__":
    main()
