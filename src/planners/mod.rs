//! The pure planners and what they share. Each takes a plain input struct and returns a
//! decision; none needs a client, so each is unit- and property-tested on its own.
//!
//! - [`upgrade`]: the schema gate of a version change (check, refuse, or stop all + migrate);
//! - [`autoscale`]: how many servers the work in the database asks for, under the
//!   stabilization windows and the disruption rule (when `capacity.autoscale` is set);
//! - [`capacity`]: how many servers now, which to drain and whose rows to remove;
//! - [`maintenance`]: the next step of a rolling replacement, one server at a time;
//! - [`canary`]: whether the servers replaced first with a new release may let the roll on;
//! - shared: [`servers`] (both views of every server), [`drain`] (drain progress under
//!   `drainTimeout`), [`windows`] (the maintenance calendar and its gate).
//!
//! How their decisions are arbitrated is `reconcile::plan::decide`'s job.

pub(crate) mod autoscale;
pub(crate) mod canary;
pub(crate) mod capacity;
pub(crate) mod drain;
pub(crate) mod maintenance;
pub(crate) mod servers;
pub(crate) mod upgrade;
pub(crate) mod windows;
