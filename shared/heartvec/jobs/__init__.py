"""Reconstruction jobs: the job store (SQLAlchemy, the truth about every job), file storage,
the message queue, and the job function every worker runs."""
