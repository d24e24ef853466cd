"""The eval stage. Not built yet: `hallbench eval` says so and exits non-zero until its issue lands."""
