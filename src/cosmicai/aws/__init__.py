"""The AWS side: Lambda stage adapters and the commands that drive a deployed stack."""
