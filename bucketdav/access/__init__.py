"""Access control: identities, the access file, the one allow/401/403 decision, credentials."""
