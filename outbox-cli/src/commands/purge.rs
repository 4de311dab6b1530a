//! `outbox purge-published`

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use outbox::OutboxAdmin;

use crate::cli::PurgeArgs;

pub(crate) async fn run(store: &dyn OutboxAdmin, args: &PurgeArgs) -> anyhow::Result<()> {
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} purged {pos} rows ({per_sec})")?);
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut total = 0u64;
    // Bounded batches: each statement is short, so purges never hold locks that inserts wait on.
    loop {
        let n = store.purge_published(args.older_than, args.batch as usize).await?;
        total += n;
        progress.inc(n);
        if n < args.batch {
            break;
        }
    }
    progress.finish_and_clear();
    println!("purged {total} published row(s) older than {}", humantime::format_duration(args.older_than));
    Ok(())
}
