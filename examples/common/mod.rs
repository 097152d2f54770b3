//! What the benchmarks share: a fleet of ShipHero accounts registered straight into a
//! registry (as `accounts add` would, then proven), each known to the simulated ShipHero.

use shiptoken::clock::{Clock, Timestamp};
use shiptoken::names::{AccountKey, Status};
use shiptoken::registry::{NewAccount, Registry, TokenRecord};
use shiptoken::secret::Secret;
use shiptoken::sim::FakeShipHero;

/// A ShipHero access token's life.
const LIFETIME: std::time::Duration = std::time::Duration::from_secs(28 * 86_400);

/// Registers `n` active accounts `shiphero/merchant-<i>` whose tokens were issued at `issued`
/// (20 days ago: due for a refresh; now: nothing due) and proven now. Returns their emails,
/// by which the simulator counts their calls.
pub async fn register_fleet(
    registry: &Registry,
    fake: &FakeShipHero,
    n: usize,
    issued: Timestamp,
) -> anyhow::Result<Vec<String>> {
    let now = Clock::system().now();
    let mut emails = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        let email = format!("ops{i}@merchant{i}.test");
        let user = fake.add_user(&email);
        emails.push(email.clone());
        let new = NewAccount {
            key: AccountKey::parse(&format!("shiphero/merchant-{i}"))?,
            email: Some(email),
            first_name: None,
            last_name: None,
            refresh_token: Some(Secret::new(user.refresh_token)),
            access_token: Some(TokenRecord {
                access_token: Secret::new(user.access_token),
                issued_at: issued,
                expires_at: Some(issued.plus(LIFETIME)),
            }),
        };
        let registry = registry.clone();
        // Many in flight so the registry thread never waits for us.
        pending.spawn(async move {
            // Registered as proven: what a passing first probe leaves.
            let mut record = (*registry.add(new, now).await?).clone();
            record.current = record.candidate.take();
            record.status = Status::Active;
            record.last_verified_at = Some(now);
            registry.save(record, Vec::new(), now).await?;
            anyhow::Ok(())
        });
        if pending.len() >= 256
            && let Some(r) = pending.join_next().await
        {
            r??;
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    Ok(emails)
}
