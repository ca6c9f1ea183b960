"""The job record's rules: job types, enqueueing, operations, reads, pausing, history."""
