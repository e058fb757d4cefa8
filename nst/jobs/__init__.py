"""Jobs, as Hydra launches them: the config read and checked into a run spec, Hydra's state, the job
driver (spec, inputs, run, record), the sweep callback and nst's launchers."""
