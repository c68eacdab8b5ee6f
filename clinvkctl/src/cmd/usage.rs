//! `clinvkctl usage [--by key|backend|model|account|day] [--since 7d] [--json]`: runs, tokens and cost
//! from the daemon's usage store.

use crate::{exit, print_json, unexpected, ClientError};
use clinvk_shared::api::{UsageGroupBy, UsageQuery};
use clinvk_shared::protocol::{Reply, Request};

#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    /// How to group the runs
    #[arg(long, value_enum, default_value = "day")]
    by: ByArg,
    /// How far back, e.g. 7d, 24h
    #[arg(long, default_value = "7d")]
    since: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ByArg {
    Day,
    Key,
    Backend,
    Model,
    /// backend/account (`default`: the CLI's own login)
    Account,
}

impl From<ByArg> for UsageGroupBy {
    fn from(b: ByArg) -> Self {
        match b {
            ByArg::Day => UsageGroupBy::Day,
            ByArg::Key => UsageGroupBy::Key,
            ByArg::Backend => UsageGroupBy::Backend,
            ByArg::Model => UsageGroupBy::Model,
            ByArg::Account => UsageGroupBy::Account,
        }
    }
}

pub async fn run(args: UsageArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let q = UsageQuery {
        by: args.by.into(),
        since: Some(args.since),
    };
    let r = match crate::request(&paths, "clinvkctl", Request::Usage(q)).await? {
        Reply::Usage(r) => r,
        other => return Err(unexpected(other)),
    };
    if args.json {
        print_json(&r);
        return Ok(exit::OK);
    }
    println!(
        "{:<28} {:>8} {:>7} {:>12} {:>12} {:>10} {:>10}",
        clinvk_shared::api::wire_name(&r.by),
        "requests",
        "errors",
        "input",
        "output",
        "cache",
        "cost $"
    );
    for g in r
        .groups
        .iter()
        .map(|g| (g.group.as_str(), &g.totals))
        .chain([("total", &r.total)])
    {
        let (name, t) = g;
        println!(
            "{:<28} {:>8} {:>7} {:>12} {:>12} {:>10} {:>10.4}",
            name, t.requests, t.errors, t.input_tokens, t.output_tokens, t.cache_tokens, t.cost_usd
        );
    }
    println!(
        "since {} (cost: claude's own figure, else an estimate from `pricing:`)",
        r.since
    );
    Ok(exit::OK)
}
