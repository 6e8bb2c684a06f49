//! Whether two short texts mean the same, judged by their structure rather than by an
//! embedding alone: the LLM gateway's semantic cache asks it before serving one prompt's
//! answer to another, the conversation's memory before merging a new fact into an old one.
//! No dependencies, no I/O: plain functions over words.
//!
//! - [`text`]: texts taken apart into words (contractions, numbers, currency signs), and the
//!   normal form a prompt is embedded in;
//! - [`guard`]: the meaning-changing differences between two texts (closed word classes,
//!   exchanged roles, content words), each with a kind and a detail for the logs.

pub mod guard;
mod lexicon;
pub mod text;
