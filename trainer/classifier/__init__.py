"""The downstream classifier (Table 3): arms, learner, resumable fits, stain, statistics."""
