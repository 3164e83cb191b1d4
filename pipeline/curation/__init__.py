"""Curation of the feedback corrections (stage `feedback`): the rules, the review file a person
edits, and the contact sheet of what waits for review."""
