"""The customer: events, the profile they update, the shard-local store, merges."""
