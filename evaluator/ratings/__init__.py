"""Rating statistics: votes in, expert scores, Fleiss' kappa, intervals, tests and reader metrics out."""
