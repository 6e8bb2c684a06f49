//! gRPC status helpers shared by every service's transport layer.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` listing each `(field, description)`.
pub fn bad_request<'a>(violations: impl IntoIterator<Item = (&'a str, &'a str)>) -> Status {
    let mut details = ErrorDetails::new();
    let mut summary = Vec::new();
    for (field, description) in violations {
        details.add_bad_request_violation(field, description);
        summary.push(format!("{field}: {description}"));
    }
    Status::with_error_details(Code::InvalidArgument, summary.join("; "), details)
}

/// Field problems of a request, collected so that the caller learns them all at once; INVALID_ARGUMENT
/// with a `google.rpc.BadRequest` naming each field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    /// One problem.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Self::default();
        v.add(field, description);
        v
    }

    /// Records a problem with `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// Checks a required text field of at most `max` characters.
    pub fn required(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
        } else {
            self.bounded(field, value, max);
        }
    }

    /// Checks an optional text field: at most `max` characters, no control characters but
    /// newlines and tabs.
    pub fn bounded(&mut self, field: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        }
        if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            self.add(field, "must not contain control characters");
        }
    }

    /// Adds the problems another collector found.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    /// The same problems with `field` called `to` (one domain check behind two APIs that
    /// name a field differently).
    pub fn renamed(mut self, field: &str, to: &str) -> Self {
        for (f, _) in &mut self.0 {
            if f == field {
                *f = to.to_owned();
            }
        }
        self
    }

    /// The problems, as (field, description) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(f, d)| (f.as_str(), d.as_str()))
    }

    /// The fields named, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _)| f.as_str())
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `value` when nothing was recorded, else the problems.
    pub fn finish<T>(self, value: T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The INVALID_ARGUMENT status.
    pub fn to_status(&self) -> Status {
        bad_request(self.0.iter().map(|(f, d)| (f.as_str(), d.as_str())))
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (field, description)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{field}: {description}")?;
        }
        Ok(())
    }
}

/// UNAVAILABLE with `retry-after` (seconds) in the metadata.
pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Status {
    let mut status = Status::unavailable(message);
    if let Ok(value) = retry_after_secs.to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_names_every_field() {
        let status = bad_request([("owner_id", "must not be empty"), ("name", "too long")]);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .expect("has BadRequest")
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["owner_id", "name"]);
    }
}
