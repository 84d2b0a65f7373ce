"""core: profiles, environment, data, models and their surgery, training, measurement, results, storage."""
