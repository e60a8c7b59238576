"""Ranking metrics under the full and sampled protocols, negatives, novelty."""
