"""The report stage. Not built yet: `hallbench report` says so and exits non-zero until its issue lands."""
