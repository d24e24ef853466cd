"""The train stage. Not built yet: `hallbench train` says so and exits non-zero until its issue lands."""
