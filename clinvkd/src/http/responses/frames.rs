//! The Responses API's stream frames: the reasoning item (when asked), the message item and the
//! function calls, as typed `event:`/`data:` frames with sequence numbers.

use super::*;

/// The Responses stream: typed `event:`/`data:` frames with sequence numbers. The message item
/// opens with the first text (an answer that is only tool calls has none).
pub(super) struct EventFrames {
    shape: Shape,
    keep: Keep,
    seq: u64,
    /// The text so far (for the `…done` events).
    text: String,
    message_open: bool,
    /// The reasoning item is open (it comes first; reasoning that comes once the message
    /// began is not shown).
    reasoning_open: bool,
}

impl EventFrames {
    pub(super) fn new(shape: Shape, keep: Keep) -> Self {
        EventFrames {
            shape,
            keep,
            seq: 0,
            text: String::new(),
            message_open: false,
            reasoning_open: false,
        }
    }

    fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = kind.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        let mut out = format!("event: {kind}\ndata: ").into_bytes();
        out.extend(serde_json::to_vec(&data).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    fn part(&self) -> Value {
        json!({"type": "output_text", "text": self.text, "annotations": []})
    }

    /// The message item's place in `output` (after the reasoning item, if any).
    fn message_index(&self) -> usize {
        usize::from(!self.shape.reasoning.is_empty())
    }

    /// The reasoning item's closing events (once it was open), before the message opens.
    fn close_reasoning(&mut self) -> Vec<Bytes> {
        if !std::mem::take(&mut self.reasoning_open) {
            return Vec::new();
        }
        let item_id = self.shape.reasoning_id.clone();
        let text = self.shape.reasoning.clone();
        let item = self.shape.reasoning_item(&text);
        let part = json!({"type": "summary_text", "text": text});
        vec![
            self.event(
                "response.reasoning_summary_text.done",
                json!({"item_id": item_id, "output_index": 0, "summary_index": 0, "text": text}),
            ),
            self.event(
                "response.reasoning_summary_part.done",
                json!({"item_id": item_id, "output_index": 0, "summary_index": 0, "part": part}),
            ),
            self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            ),
        ]
    }

    /// The message item's opening events (once).
    fn open_message(&mut self) -> Vec<Bytes> {
        if self.message_open {
            return Vec::new();
        }
        let mut out = self.close_reasoning();
        self.message_open = true;
        let index = self.message_index();
        let item = json!({
            "type": "message", "id": self.shape.message_id, "status": "in_progress",
            "role": "assistant", "content": [],
        });
        let part = self.part();
        let item_id = self.shape.message_id.clone();
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        out.push(self.event(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
        ));
        out
    }

    /// The message item's closing events.
    fn close_message(&mut self) -> Vec<Bytes> {
        let item_id = self.shape.message_id.clone();
        let text = self.text.clone();
        let part = self.part();
        let item = self.shape.message(&text, "completed");
        let index = self.message_index();
        vec![
            self.event(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            ),
            self.event(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
            ),
            self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            ),
        ]
    }

    /// `response.completed`, the stored response written first (so a client that asks for it,
    /// or continues it, right after finds it: one small file, written here).
    fn completed(&mut self, calls: &[CallView], result: &PromptResult) -> Bytes {
        let text = self.text.clone();
        let body = self
            .shape
            .object("completed", Some(&text), calls, Some(result), None);
        if self.shape.store {
            self.keep.save_now(&self.shape.id, &body);
        }
        self.event("response.completed", json!({ "response": body }))
    }
}

impl Frames for EventFrames {
    fn serve_as(&mut self, model: &str) {
        self.shape.model = model.to_string();
    }

    fn start(&mut self) -> Vec<Bytes> {
        let created = self.shape.object("in_progress", None, &[], None, None);
        vec![
            self.event("response.created", json!({"response": created})),
            self.event("response.in_progress", json!({"response": created})),
        ]
    }

    fn delta(&mut self, text: &str) -> Vec<Bytes> {
        let mut out = self.open_message();
        self.text.push_str(text);
        let item_id = self.shape.message_id.clone();
        let index = self.message_index();
        out.push(self.event(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
        ));
        out
    }

    fn thinking(&mut self, text: &str) -> Vec<Bytes> {
        if self.message_open {
            return Vec::new(); // the reasoning item is closed
        }
        let mut out = Vec::new();
        let item_id = self.shape.reasoning_id.clone();
        if !self.reasoning_open {
            self.reasoning_open = true;
            let item = self.shape.reasoning_item("");
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ));
            out.push(self.event(
                "response.reasoning_summary_part.added",
                json!({"item_id": item_id, "output_index": 0, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
            ));
        }
        self.shape.reasoning.push_str(text);
        out.push(self.event(
            "response.reasoning_summary_text.delta",
            json!({"item_id": item_id, "output_index": 0, "summary_index": 0, "delta": text}),
        ));
        out
    }

    fn finish(&mut self, result: &PromptResult) -> Vec<Bytes> {
        let mut out = self.open_message();
        out.extend(self.close_message());
        out.push(self.completed(&[], result));
        out
    }

    fn calls(&mut self, calls: &[CallView]) -> Vec<Bytes> {
        let mut out = self.close_reasoning();
        let first = if self.message_open {
            out.extend(self.close_message());
            self.message_index() + 1
        } else {
            self.message_index()
        };
        for (i, c) in calls.iter().enumerate() {
            let index = first + i;
            let item_id = format!("fc_{}", c.id);
            let args = c.arguments_json();
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": function_call(c, "in_progress")}),
            ));
            out.push(self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": args}),
            ));
            out.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": index, "name": c.name, "arguments": args}),
            ));
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": function_call(c, "completed")}),
            ));
        }
        out.push(self.completed(calls, &PromptResult::default()));
        out
    }

    fn error(&mut self, e: &ApiError) -> Vec<Bytes> {
        let failed = self.shape.object("failed", None, &[], None, Some(e));
        vec![self.event("response.failed", json!({ "response": failed }))]
    }
}
