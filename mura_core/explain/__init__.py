"""Explanations: the thread-safe Predictor, CAM heat-map methods (one table) and the pointing game."""
