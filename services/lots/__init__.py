"""The lots service: receives lots into quarantine and decides when each may be used."""
