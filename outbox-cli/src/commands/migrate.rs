//! `outbox migrate`

use outbox::Retention;

use crate::backends;
use crate::settings::Common;

pub(crate) async fn run(common: &Common) -> anyhow::Result<()> {
    let db = backends::connect_db(common).await?;
    let config = backends::store_config(common, Retention::Delete, None);
    outbox::sea_orm::migrate(&db, &config).await?;
    println!("outbox table `{}` is ready", common.table);
    Ok(())
}
