"""Evaluation: scoring predicted masks against ground truth (locally or with Ray Data), the tables and reports
made from the scores, and the exports for online servers."""
