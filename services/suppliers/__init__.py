"""The suppliers service: the approved supplier list, per material, with its history."""
