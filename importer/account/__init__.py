"""The VoiceLink account: API client, its records, the page walker, inventory, limiter, retries."""
