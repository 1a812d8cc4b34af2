//! tansu, an Apache-Kafka-compatible broker (`scripts/install-tansu.sh`), started on a
//! free port, with a producer and a reader for tests.

use super::{free_port, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Kafka {
    child: Child,
    pub brokers: String,
    storage: String,
    dir: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    producer: FutureProducer,
}

/// tansu resolves a `sqlite://` path against its working directory, so it runs in the
/// folder that holds its database (the system temp folder for in-memory storage).
pub fn spawn_tansu(brokers: &str, storage: &str, dir: &std::path::Path) -> Child {
    let url = format!("tcp://{brokers}");
    let child = Command::new(tansu_bin())
        .current_dir(dir)
        .args([
            "broker",
            "--storage-engine",
            storage,
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu must be installed: scripts/install-tansu.sh");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(brokers).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {brokers}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

pub fn tansu_bin() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = format!("{home}/.cargo/bin/tansu");
    if std::path::Path::new(&installed).exists() {
        installed
    } else {
        "tansu".into()
    }
}

impl Kafka {
    pub fn start() -> Kafka {
        Kafka::start_with_storage("memory://tansu/", &std::env::temp_dir())
    }

    pub fn start_with_storage(storage: &str, dir: &std::path::Path) -> Kafka {
        let brokers = format!("127.0.0.1:{}", free_port());
        let child = spawn_tansu(&brokers, storage, dir);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let producer = rt.block_on(async {
            ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("message.timeout.ms", "60000")
                .create::<FutureProducer>()
                .unwrap()
        });
        Kafka {
            child,
            brokers,
            storage: storage.to_owned(),
            dir: dir.to_path_buf(),
            rt,
            producer,
        }
    }

    /// SIGKILL and start again on the same port and storage.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_tansu(&self.brokers, &self.storage, &self.dir);
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://{}", self.brokers),
                "--partitions",
                &partitions.to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create");
        assert!(status.success(), "creating topic {name}");
    }

    pub fn produce(&self, topic: &str, key: &str, payload: &str, headers: &[(&str, &str)]) {
        self.rt.block_on(async {
            let mut h = OwnedHeaders::new();
            for (k, v) in headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            self.producer
                .send(
                    FutureRecord::to(topic).key(key).payload(payload).headers(h),
                    Duration::from_secs(30),
                )
                .await
                .expect("produce");
        });
    }

    /// Writes `payload` to one partition of `topic`, whatever its key would choose.
    #[allow(dead_code)] // not every test binary uses it
    pub fn produce_to(&self, topic: &str, partition: i32, key: &str, payload: &str) {
        self.rt.block_on(async {
            self.producer
                .send(
                    FutureRecord::to(topic)
                        .partition(partition)
                        .key(key)
                        .payload(payload),
                    Duration::from_secs(30),
                )
                .await
                .expect("produce");
        });
    }

    /// Payloads in `topic`, as `read_records` reads them.
    pub fn read_all(&self, topic: &str, at_least: usize) -> Vec<String> {
        self.read_records(topic, at_least)
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.payload.unwrap_or_default()).into_owned())
            .collect()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record as a consumer sees it.
#[derive(Debug)]
pub struct Record {
    pub key: Option<String>,
    pub partition: i32,
    /// `None`: a tombstone.
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Kafka {
    /// Records in `topic`, read from the start by a fresh consumer group: once at least
    /// `at_least` have arrived (within 60 s), everything up to the end of every partition
    /// at that moment, so a duplicate or an extra record after them is seen too.
    pub fn read_records(&self, topic: &str, at_least: usize) -> Vec<Record> {
        self.rt.block_on(async {
            let consumer: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .set("group.id", unique("reader"))
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            consumer.subscribe(&[topic]).unwrap();
            let mut out = Vec::new();
            // Per partition: the offset after the last record read.
            let mut next: HashMap<i32, i64> = HashMap::new();
            // Per partition: (low, high) watermarks, taken once `at_least` are read.
            let mut end: Option<HashMap<i32, (i64, i64)>> = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if end.is_none() && out.len() >= at_least {
                    end = Some(watermarks(&consumer, topic));
                }
                if let Some(end) = &end {
                    let at_end = end
                        .iter()
                        .all(|(p, (low, high))| next.get(p).copied().unwrap_or(*low) >= *high);
                    if at_end {
                        break;
                    }
                }
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(m)) => {
                        next.insert(m.partition(), m.offset() + 1);
                        out.push(Record {
                            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                            partition: m.partition(),
                            payload: m.payload().map(<[u8]>::to_vec),
                            headers: m
                                .headers()
                                .map(|h| {
                                    h.iter()
                                        .map(|h| {
                                            (
                                                h.key.to_owned(),
                                                String::from_utf8_lossy(
                                                    h.value.unwrap_or_default(),
                                                )
                                                .into_owned(),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        })
                    }
                    Ok(Err(_)) => {}
                    Err(_) => break,
                }
            }
            out
        })
    }
}

/// Every partition of `topic` with its low and high watermark.
fn watermarks(consumer: &StreamConsumer, topic: &str) -> HashMap<i32, (i64, i64)> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    assert!(!partitions.is_empty(), "{topic} has no partitions");
    partitions
        .into_iter()
        .map(|p| {
            let marks = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, marks)
        })
        .collect()
}
