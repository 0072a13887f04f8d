"""The read side: reader (queries against DynamoDB), console (API, page, `logpipe query`)."""
