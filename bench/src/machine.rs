//! What the figures were measured on: date, cores, memory, CPU model and server versions.

use serde::Serialize;

use crate::env::Env;

/// The machine and servers of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Machine {
    date: String,
    cores: usize,
    memory: String,
    cpu_model: String,
    load_average: String,
    postgres: String,
    nats: String,
    redis: String,
}

impl Machine {
    /// Reads `/proc`, runs `date`, and asks each server its version.
    pub(crate) async fn probe(env: &Env) -> Self {
        let date = std::process::Command::new("date")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = field(&meminfo, "MemTotal")
            .and_then(|v| v.trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_default();
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Self {
            date,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory,
            cpu_model: match field(&cpuinfo, "cpu MHz").and_then(|m| m.parse::<f64>().ok()) {
                Some(mhz) => format!("{} at {mhz:.0} MHz", field(&cpuinfo, "model name").unwrap_or_default()),
                None => field(&cpuinfo, "model name").unwrap_or_default().to_owned(),
            },
            load_average,
            postgres: env.postgres_version().await,
            nats: format!("nats-server {} (JetStream, file storage)", env.nats.server_info().version),
            redis: env.redis_version().await,
        }
    }

    /// A Markdown bullet list.
    pub(crate) fn markdown(&self) -> String {
        format!(
            "- Date: {}\n- Cores: {} (nproc), memory {}, CPU: {}\n- Load average at start: {} (the machine is shared with other builds)\n\
             - Servers on loopback, default settings: PostgreSQL {}; {}; Redis {}\n",
            self.date, self.cores, self.memory, self.cpu_model, self.load_average, self.postgres, self.nats, self.redis
        )
    }
}

/// The value of `name: value` in a `/proc` text file.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nMemTotal:       24000000 kB\n";
        assert_eq!(field(text, "model name"), Some("AMD EPYC 7B13"));
        assert_eq!(field(text, "MemTotal"), Some("24000000 kB"));
        assert_eq!(field(text, "missing"), None);
    }
}
