//! TLS and mutual TLS on the server stack, with our client channels, using certificates made
//! by the openssl CLI for this test.

use std::path::{Path, PathBuf};
use std::process::Command;

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::client::ChannelFactory;
use boardroom_runtime::config::{ClientConfig, TlsConfig};
use boardroom_testkit::TestDatabase;
use tonic::Code;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, both signed by it.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "boardroom-tls-{}",
        boardroom_testkit::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=boardroom-test-ca",
        ],
    );
    // Extensions make v3 certificates (webpki refuses v1).
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(["-extfile".to_owned(), ext.to_owned()]);
        openssl(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_our_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = certificates();
    let tls = TlsConfig {
        cert_path: dir.join("server.pem"),
        key_path: dir.join("server.key"),
        client_ca_path: Some(dir.join("ca.pem")),
    };
    let app = spawn_app_with_tls(tls).await;
    let address = format!("https://localhost:{}", app.0.port());
    let request = || pb::GetBoardroomRequest {
        id: uuid::Uuid::now_v7().to_string(),
    };

    let with_cert = ClientConfig {
        ca_path: Some(dir.join("ca.pem")),
        cert_path: Some(dir.join("client.pem")),
        key_path: Some(dir.join("client.key")),
        ..ClientConfig::default()
    };
    let channel = ChannelFactory::new(with_cert)
        .channel(std::slice::from_ref(&address))
        .expect("channel");
    let err = SessionServiceClient::new(channel)
        .get_boardroom(request())
        .await
        .expect_err("not found");
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the handshake succeeded and the call reached the service: {err:?}"
    );

    let without_cert = ClientConfig {
        ca_path: Some(dir.join("ca.pem")),
        ..ClientConfig::default()
    };
    let channel = ChannelFactory::new(without_cert)
        .channel(std::slice::from_ref(&address))
        .expect("channel");
    let err = SessionServiceClient::new(channel)
        .get_boardroom(request())
        .await
        .expect_err("refused");
    // With TLS 1.3 the server checks the client certificate after the client thinks the
    // handshake is done, so the refusal surfaces as a transport error (a closed connection
    // or the CertificateRequired alert, whichever the client reads first).
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ) && std::error::Error::source(&err).is_some(),
        "a client without a certificate never reaches the service: {err:?}"
    );

    app.1.cancel();
    app.2.await.expect("joined").expect("clean shutdown");
    std::fs::remove_dir_all(dir).ok();
}

async fn spawn_app_with_tls(
    tls: TlsConfig,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    // The plaintext test client of helpers::spawn_app_with cannot connect; build it by hand.
    let db = TestDatabase::sqlite();
    let mut config = boardroom_testkit::test_config(&db);
    config.server.tls = Some(tls);
    let app = boardroom_session::Application::build(&config)
        .await
        .expect("build");
    let addr = app.local_addr().expect("bound");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    (addr, shutdown, task)
}
