"""RQ side of Minicourse: job functions, the app-aware worker and the cron config."""
