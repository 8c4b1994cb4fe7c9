"""AWPO inside the engines users already run at scale: TRL (`awpo.integrations.trl`: `AWPOTrainer`, a
`GRPOTrainer` on accelerate / DeepSpeed / FSDP) and verl (`awpo.integrations.verl`: a registered
advantage estimator, policy loss and reward function). Each imports its engine lazily: importing
this package needs neither."""
