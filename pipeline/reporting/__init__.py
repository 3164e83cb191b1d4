"""Reports for people (figures, the FLOPs table): no stage's outputs depend on how they read."""
