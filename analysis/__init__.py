"""Pure functions over arrays: attention maps from Q/K, head statistics, rollout, drift, padding."""
