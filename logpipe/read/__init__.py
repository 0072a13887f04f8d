"""The read side: reader (queries against DynamoDB), console (API, page), query_cli
(`logpipe query`, from the table or through a console), export, stats."""
