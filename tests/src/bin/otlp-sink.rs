//! A stand-in OpenTelemetry collector for the benchmark: receives OTLP/gRPC
//! metrics and spans on a loopback port and keeps them, as the suite's
//! receiver does. Prints `listening on PORT`, then, on SIGTERM, the
//! number of spans it received.

use godwit_tests::otlp::OtlpReceiver;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    println!("listening on {}", receiver.port);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    terminate.recv().await;
    println!("spans {}", receiver.spans().len());
    Ok(())
}
