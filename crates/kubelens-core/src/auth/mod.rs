//! Authentication (Keycloak / OIDC) and the identity it produces.

mod principal;

pub use principal::Principal;
