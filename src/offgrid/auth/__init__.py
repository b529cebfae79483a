"""Who may call the API: API keys (``keys``) and the check every request passes (``guard``)."""
