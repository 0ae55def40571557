"""Model code only (no I/O). Modules here import TensorFlow at the top: import them lazily."""
