"""Offline inference: a dataset or manifest -> work items -> model actors -> masks, scores and errors
tables, with resume, planning and the run's bookkeeping."""
