"""Database access for the query stage: sources, the filter language, sampling, the stage itself."""
