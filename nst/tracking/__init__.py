"""Recording runs: the MLflow store (SQLite file or server), its tags and queries, who owns a RUNNING
run, the recorder the engine reports to, and the run folder's own files (video, progress images)."""
