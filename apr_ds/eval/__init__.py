"""Budgeted evaluation (APR vs SoS+ vs best-of-n), metrics, and the report."""
