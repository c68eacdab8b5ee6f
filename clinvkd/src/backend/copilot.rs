//! Copilot (`copilot`): not wired yet (work in progress: argv, output parsing and the live mode).

use super::*;

pub(crate) struct Copilot;

impl Adapter for Copilot {
    fn backend(&self) -> Backend {
        Backend::Copilot
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: ImageDelivery::Files,
            output_schema: SchemaDelivery::Instruction,
            client_tools: ToolSupport::WarmOnly,
        }
    }

    fn claims_model(&self, _lower: &str) -> bool {
        false
    }

    fn model_families(&self) -> &'static str {
        ""
    }

    fn credential_folders(&self) -> &'static [&'static str] {
        &[]
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        &[]
    }

    fn build(&self, _inv: &Invocation, _cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        Err(ArgvError::Invalid("copilot: not wired yet".into()))
    }

    fn parser(&self) -> Box<dyn LineParser> {
        unimplemented!("copilot: not wired yet")
    }

    fn live(&self, _inv: &Invocation, _cfg: &BackendSettings) -> Result<LiveSpec, ArgvError> {
        Err(ArgvError::Invalid("copilot: not wired yet".into()))
    }
}
