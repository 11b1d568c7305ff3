"""The VoiceLink account: the API client, live state, the rate limiter and the retry policy."""
