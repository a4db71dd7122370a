//! Machine, Application and Rollout reconcilers: decisions and their effects.
