//! [`Outcome`]: the end result of a run, folded from its events.

use clinvk_shared::types::TokenUsage;

use super::Event;

/// What a run produced, built by applying its events in order.
///
/// `output` is the CLI's final result text when it prints one, else the assistant text:
/// separate messages joined by a blank line, and streamed deltas replaced by the whole message
/// when the CLI prints that too (claude), so text is never doubled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub session_id: Option<String>,
    pub output: String,
    pub usage: TokenUsage,
    /// The first error reported (CLI error line, error result or failed exit).
    pub error: Option<String>,
    pub is_error: bool,
    /// Lines that were not the expected JSON.
    pub unparsed: usize,
    /// Where the deltas not yet confirmed by a whole message start in `output`.
    pending_deltas: Option<usize>,
    /// A final result text has replaced `output`; later text no longer changes it.
    from_result: bool,
}

impl Outcome {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds a whole event list.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut o = Self::new();
        for ev in events {
            o.apply(ev);
        }
        o
    }

    pub fn apply(&mut self, ev: &Event) {
        match ev {
            Event::SessionStarted { session_id, .. } => {
                if self.session_id.is_none() && !session_id.is_empty() {
                    self.session_id = Some(session_id.clone());
                }
            }
            Event::TextDelta { text } => {
                if self.from_result || text.is_empty() {
                    return;
                }
                if self.pending_deltas.is_none() {
                    self.separate();
                    self.pending_deltas = Some(self.output.len());
                }
                self.output.push_str(text);
            }
            Event::Message { text } => {
                if self.from_result || text.is_empty() {
                    return;
                }
                match self.pending_deltas.take() {
                    // The whole message of the deltas just streamed: it replaces them.
                    Some(start) => self.output.truncate(start),
                    None => self.separate(),
                }
                self.output.push_str(text);
            }
            // Text after a tool call is a new message.
            Event::ToolUse { .. } | Event::ToolResult { .. } => self.pending_deltas = None,
            Event::Thinking { .. } => {}
            Event::Usage(u) => self.usage.add(*u),
            Event::Result { text, is_error } => {
                if *is_error {
                    self.is_error = true;
                } else if let Some(t) = text.as_deref().filter(|t| !t.is_empty()) {
                    self.output = t.to_string();
                    self.pending_deltas = None;
                    self.from_result = true;
                }
            }
            Event::Error { message } => {
                self.is_error = true;
                if self.error.is_none() {
                    self.error = Some(message.clone());
                }
            }
            Event::Unparsed { .. } => self.unparsed += 1,
        }
    }

    fn separate(&mut self) {
        if !self.output.is_empty() {
            self.output.push_str("\n\n");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn delta(t: &str) -> Event {
        Event::TextDelta { text: t.into() }
    }
    fn msg(t: &str) -> Event {
        Event::Message { text: t.into() }
    }
    fn tool() -> Event {
        Event::ToolUse {
            id: None,
            name: "Bash".into(),
            input: serde_json::json!({}),
        }
    }

    #[test]
    fn deltas_then_whole_message_not_doubled() {
        let o = Outcome::from_events(&[delta("Hel"), delta("lo"), msg("Hello")]);
        assert_eq!(o.output, "Hello");
    }

    #[test]
    fn deltas_only_and_messages_only() {
        assert_eq!(
            Outcome::from_events(&[delta("a "), delta("b")]).output,
            "a b"
        );
        assert_eq!(
            Outcome::from_events(&[msg("one"), msg("two")]).output,
            "one\n\ntwo"
        );
    }

    #[test]
    fn messages_around_tools() {
        let o = Outcome::from_events(&[
            delta("Look"),
            msg("Looking."),
            tool(),
            delta("Do"),
            delta("ne"),
            msg("Done"),
        ]);
        assert_eq!(o.output, "Looking.\n\nDone");
        // gemini: deltas only, split by a tool call
        let o = Outcome::from_events(&[delta("a"), tool(), delta("b")]);
        assert_eq!(o.output, "a\n\nb");
    }

    #[test]
    fn result_text_wins_and_errors_stick() {
        let o = Outcome::from_events(&[
            msg("draft"),
            Event::Result {
                text: Some("final".into()),
                is_error: false,
            },
            delta("late"),
        ]);
        assert_eq!(o.output, "final");
        assert!(!o.is_error);
        let o = Outcome::from_events(&[
            msg("partial"),
            Event::Result {
                text: Some(String::new()),
                is_error: false,
            },
        ]);
        assert_eq!(o.output, "partial");
        let o = Outcome::from_events(&[
            Event::Error {
                message: "first".into(),
            },
            Event::Error {
                message: "second".into(),
            },
            Event::Result {
                text: Some("API Error".into()),
                is_error: true,
            },
            Event::Unparsed { line: "x".into() },
        ]);
        assert!(o.is_error);
        assert_eq!(o.error.as_deref(), Some("first"));
        assert_eq!(o.output, "");
        assert_eq!(o.unparsed, 1);
    }

    #[test]
    fn usage_adds_and_first_session_kept() {
        let u = |i, o| {
            Event::Usage(TokenUsage {
                input_tokens: i,
                output_tokens: o,
            })
        };
        let s = |id: &str| Event::SessionStarted {
            session_id: id.into(),
            model: None,
        };
        let o = Outcome::from_events(&[s("a"), u(1, 2), s("b"), u(10, 20)]);
        assert_eq!(o.session_id.as_deref(), Some("a"));
        assert_eq!(
            o.usage,
            TokenUsage {
                input_tokens: 11,
                output_tokens: 22
            }
        );
    }
}
