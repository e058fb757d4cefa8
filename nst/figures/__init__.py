"""Pictures drawn for people: grids, triptychs, loss plots, the run's video, and labels for swept values."""
