//! Why the webhook refuses to inject a pod: the one error type of injection, with the HTTP-style
//! code the admission response carries.

/// Why a review gets no patch: a clean skip, or a refusal with its HTTP-style code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Malformed request or pod, or an annotation with a bad value (400).
    #[error("{0}")]
    Invalid(String),
    /// The pod has something the sidecar needs under its own name (409).
    #[error("{0}")]
    Conflict(String),
}

impl Refusal {
    pub fn code(&self) -> u16 {
        match self {
            Refusal::Invalid(_) => 400,
            Refusal::Conflict(_) => 409,
        }
    }
}

pub(crate) fn invalid<T>(message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Invalid(message.into()))
}
