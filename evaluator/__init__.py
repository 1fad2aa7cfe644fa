"""evaluator: votes and image pools in, the paper's tables and figures (and sounder statistics) out."""
