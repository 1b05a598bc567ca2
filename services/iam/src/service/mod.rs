//! The IAM service logic over a [`Store`](crate::Store): one [`Iam`] per process, shared by
//! every request. No HTTP here (see [`crate::api`]).
//!
//! One room per concern, each an `impl Iam` block over the same state:
//! - `state`: the [`Iam`] struct (store, signing key, caches) and the record helpers;
//! - `caller`: the [`Session`] of a verified caller and its permission checks;
//! - `bootstrap`: the first admin (a name and a password hash), exactly once across instances;
//! - `session`: login by password, node tokens by certificate, token verification with the
//!   session cache that outlives FlareDB outages, and the published signing keys;
//! - `revocation`: revoking tokens everywhere, pruning old records;
//! - `users`: user CRUD and passwords;
//! - `roles`: built-in and custom roles, and the bindings of users to roles.
//!
//! The rooms import `state` and `caller`, never this module or each other, so nothing here
//! imports in a circle.

mod bootstrap;
mod caller;
mod revocation;
mod roles;
mod session;
mod state;
#[cfg(test)]
mod tests;
mod users;

pub use bootstrap::BootstrapOutcome;
pub use caller::Session;
pub use session::{IssuedToken, MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS};
pub use state::Iam;
pub use users::UserView;
