"""The queue's upkeep: rescue, retention and the periodic tasks that run them."""
