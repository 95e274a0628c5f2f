//! `forkline top NAME`: a live terminal view of a running cluster, refreshed every `--interval`
//! (1 s): the primary, the cluster's counters, the accept rate with a sparkline of its last 60
//! samples, one row per worker slot, and a status line; `r` reloads, `+`/`-` scale by one, `q`,
//! Esc or Ctrl-C quit.
//!
//! Nothing waits on the screen's thread: the status is polled by a thread of its own, and each
//! reload or scale request runs on its own thread and connection (a reload is answered only when
//! it is done), all reporting back over one channel. The terminal is put back as it was (raw
//! mode off, the alternate screen left, the cursor shown) on every way out: a key, the cluster
//! stopping, an error, SIGTERM/SIGHUP/SIGINT, or a panic. When the cluster stops (its control
//! socket is gone), the view says so and exits 0 on the next key or after [`GONE_LINGER`].

use std::io::{IsTerminal, Stdout, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use forkline::control::{Done, Reply, Request, Scaled, Status};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, RenderDirection, Row, Sparkline, Table};
use ratatui::{Frame, Terminal};

use super::cluster_args::ClusterArgs;
use super::top_model::{self, Model, COLUMNS};
use crate::control::{self, Target};
use crate::error::CliError;
use crate::parse;

/// How long the view stays up once the cluster stopped, unless a key is pressed first.
pub const GONE_LINGER: Duration = Duration::from_secs(5);

/// The shortest `--interval` taken.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long one status request may take before the refresh reports no answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the screen's thread looks at the keyboard, the channel and the signals.
const TICK: Duration = Duration::from_millis(50);

/// Arguments of `forkline top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// How often to refresh: 1s, 500ms, 2s (at least 100ms)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = interval)]
    pub interval: Duration,

    /// Which cluster: NAME, or --control PATH.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `--interval`: a duration of at least [`MIN_INTERVAL`].
fn interval(s: &str) -> Result<Duration, String> {
    let d = parse::duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!(
            "must be at least {}",
            parse::format_duration(MIN_INTERVAL)
        ));
    }
    Ok(d)
}

/// Runs `top`. Without a terminal on stdout it is a usage error (exit 2) pointing at
/// `forkline status`; an unknown cluster fails before the screen is touched, as `status` does.
pub fn top(args: TopArgs) -> Result<i32, CliError> {
    if !std::io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "forkline top needs a terminal; use forkline status".into(),
        ));
    }
    let target = args.cluster.target()?;
    let first = target.call(Request::Status, Some(STATUS_TIMEOUT))?;
    let mut app = App::new(target, args.interval);
    app.status(Poll::Status(first));

    let quit = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&quit))
            .map_err(|e| CliError::Runtime(format!("cannot handle signals: {e}")))?;
    }

    let (tx, rx) = mpsc::channel();
    spawn_poller(app.target.clone(), args.interval, tx.clone());
    let guard = TerminalGuard::enter()?;
    let result = app.run(&guard, &rx, &tx, &quit);
    drop(guard);
    result
}

/// What the helper threads report.
enum Msg {
    /// A refresh.
    Status(Poll),
    /// A reload's reply, and when it was sent.
    Reload(Result<Reply<Done>, CliError>, Instant),
    /// A scale request's reply.
    Scale(Result<Reply<Scaled>, CliError>),
}

/// One status request's outcome.
enum Poll {
    /// The answer.
    Status(Status),
    /// The control socket is gone: the cluster stopped.
    Gone,
    /// No usable answer this time (a timeout, a closed connection); the next refresh retries.
    Failed(String),
}

/// Polls the status every `interval` until the screen's thread is gone.
fn spawn_poller(target: Target, interval: Duration, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut spent = Duration::ZERO;
        loop {
            // Keep the pace when a request was slow.
            std::thread::sleep(interval.saturating_sub(spent));
            let started = Instant::now();
            let poll = match target.call(Request::Status, Some(STATUS_TIMEOUT)) {
                Ok(status) => Poll::Status(status),
                Err(_) if gone(&target.path) => Poll::Gone,
                Err(e) => Poll::Failed(e.to_string()),
            };
            let stop = matches!(poll, Poll::Gone);
            if tx.send(Msg::Status(poll)).is_err() || stop {
                return;
            }
            spent = started.elapsed();
        }
    });
}

/// True when nothing serves `path` any more (no file, or nobody listening on it).
fn gone(path: &Path) -> bool {
    match UnixStream::connect(path) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ),
    }
}

/// The status line: a message, good or bad.
struct Message {
    text: String,
    ok: bool,
}

/// The screen's state.
struct App {
    target: Target,
    interval: Duration,
    model: Model,
    /// When the reload this view asked for was sent, while it runs.
    reload_sent: Option<Instant>,
    /// Scale requests sent and not answered yet.
    scales_pending: usize,
    message: Option<Message>,
    /// When the cluster was found gone.
    gone: Option<Instant>,
}

impl App {
    fn new(target: Target, interval: Duration) -> App {
        App {
            target,
            interval,
            model: Model::new(),
            reload_sent: None,
            scales_pending: 0,
            message: None,
            gone: None,
        }
    }

    fn say(&mut self, ok: bool, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            ok,
        });
    }

    /// Takes a refresh in.
    fn status(&mut self, poll: Poll) {
        match poll {
            Poll::Status(status) => {
                self.model.update(status);
                if self
                    .message
                    .as_ref()
                    .is_some_and(|m| m.text.starts_with("no answer"))
                {
                    self.message = None;
                }
            }
            Poll::Gone => {
                self.gone = Some(Instant::now());
                self.say(
                    false,
                    format!(
                        "the cluster stopped (its control socket is gone): press any key to leave, \
                         or wait {}s",
                        GONE_LINGER.as_secs()
                    ),
                );
            }
            Poll::Failed(e) => self.say(false, format!("no answer this time: {e}")),
        }
    }

    /// Handles a helper thread's report.
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Status(poll) => self.status(poll),
            Msg::Reload(reply, sent) => {
                self.reload_sent = None;
                let secs = sent.elapsed().as_secs_f64();
                self.report("reload", reply.map(|r| top_model::reload_outcome(&r, secs)));
            }
            Msg::Scale(reply) => {
                self.scales_pending = self.scales_pending.saturating_sub(1);
                self.report("scale", reply.map(|r| top_model::scale_outcome(&r)));
            }
        }
    }

    /// Shows the outcome of a `what` request (good or bad, and its line), or why there was
    /// none; nothing once the cluster is gone.
    fn report(&mut self, what: &str, outcome: Result<(bool, String), CliError>) {
        if self.gone.is_some() {
            return;
        }
        match outcome {
            Ok((ok, text)) => self.say(ok, text),
            Err(e) => self.say(false, format!("{what}: {e}")),
        }
    }

    /// Handles a key; true to quit.
    fn key(&mut self, key: KeyEvent, tx: &mpsc::Sender<Msg>) -> bool {
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || self.gone.is_some() {
            return true;
        }
        match key.code {
            KeyCode::Char('r') => {
                if self.reload_sent.is_some() {
                    self.say(false, "a reload is already running");
                    return false;
                }
                let sent = Instant::now();
                self.reload_sent = Some(sent);
                self.say(true, "reloading…");
                let target = self.target.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let reply = target.send(Request::Reload, None);
                    let _ = tx.send(Msg::Reload(reply, sent));
                });
            }
            KeyCode::Char(c @ ('+' | '-')) => {
                let delta = if c == '+' { 1 } else { -1 };
                self.scales_pending += 1;
                self.say(true, format!("scaling by {c}1…"));
                let target = self.target.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let request = Request::Scale {
                        workers: None,
                        delta: Some(delta),
                    };
                    let reply = target.send(request, Some(control::QUICK));
                    let _ = tx.send(Msg::Scale(reply));
                });
            }
            _ => {}
        }
        false
    }

    /// The loop of the screen's thread: draw when something changed, read keys, take the
    /// helper threads' reports, leave on `q`/Esc/Ctrl-C, a signal, or the cluster gone for
    /// [`GONE_LINGER`].
    fn run(
        &mut self,
        guard: &TerminalGuard,
        rx: &mpsc::Receiver<Msg>,
        tx: &mpsc::Sender<Msg>,
        quit: &AtomicBool,
    ) -> Result<i32, CliError> {
        let mut terminal = guard.terminal()?;
        let mut dirty = true;
        loop {
            if quit.load(Ordering::Relaxed) {
                return Ok(0);
            }
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
                dirty = true;
            }
            if self.gone.is_some_and(|t| t.elapsed() >= GONE_LINGER) {
                return Ok(0);
            }
            if dirty {
                terminal
                    .draw(|frame| self.draw(frame))
                    .map_err(|e| CliError::Runtime(format!("cannot draw on the terminal: {e}")))?;
                dirty = false;
            }
            let ready = event::poll(TICK)
                .map_err(|e| CliError::Runtime(format!("cannot read the terminal: {e}")))?;
            if !ready {
                continue;
            }
            match event::read()
                .map_err(|e| CliError::Runtime(format!("cannot read the terminal: {e}")))?
            {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    if self.key(key, tx) {
                        return Ok(0);
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }

    /// The whole screen.
    fn draw(&self, frame: &mut Frame) {
        let [header, counters, spark, table, status, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(6),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let bold = Style::new().add_modifier(Modifier::BOLD);
        frame.render_widget(
            Paragraph::new(Line::styled(self.model.header(&self.target.name), bold)),
            header,
        );
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                Span::raw(self.model.counters()),
                Span::raw("  reload: "),
                Span::styled(self.reload_state(), bold),
            ])),
            counters,
        );
        self.draw_sparkline(frame, spark);
        self.draw_table(frame, table);
        if let Some(message) = &self.message {
            let color = if message.ok { Color::Green } else { Color::Red };
            frame.render_widget(
                Paragraph::new(Line::styled(message.text.as_str(), Style::new().fg(color))),
                status,
            );
        }
        frame.render_widget(
            Paragraph::new(Line::styled(
                format!(
                    "r reload   + add a worker   - remove a worker   q quit   (every {})",
                    parse::format_duration(self.interval)
                ),
                Style::new().add_modifier(Modifier::DIM),
            )),
            keys,
        );
    }

    /// `running` while a reload runs (asked by this view or, when the primary says so, by
    /// anyone), else `idle`.
    fn reload_state(&self) -> String {
        match (self.reload_sent, self.model.reloading()) {
            (Some(sent), _) => format!("running for {}s", sent.elapsed().as_secs()),
            (None, Some(true)) => "running".into(),
            _ => "idle".into(),
        }
    }

    fn draw_sparkline(&self, frame: &mut Frame, area: Rect) {
        // Newest sample at the right edge; rates scaled by 100 to keep fractions visible.
        let data: Vec<u64> = self
            .model
            .history()
            .rev()
            .map(|r| (r * 100.0).round() as u64)
            .collect();
        let sparkline = Sparkline::default()
            .block(Block::bordered().title(format!(" {} ", self.model.rate_title())))
            .data(&data)
            .direction(RenderDirection::RightToLeft)
            .style(Style::new().fg(Color::Cyan));
        frame.render_widget(sparkline, area);
    }

    fn draw_table(&self, frame: &mut Frame, area: Rect) {
        let rows = self.model.rows();
        let widths: Vec<Constraint> = (0..COLUMNS.len())
            .map(|c| {
                let widest = rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([COLUMNS[c].len()])
                    .max()
                    .unwrap_or(0);
                Constraint::Length(widest as u16)
            })
            .collect();
        let body = rows.into_iter().map(|cells| {
            let color = match cells[2].split(' ').next().unwrap_or("") {
                "ready" => Color::Green,
                "starting" | "online" => Color::Yellow,
                "draining" => Color::Magenta,
                _ => Color::Red,
            };
            let mut row: Vec<Span> = cells.into_iter().map(Span::raw).collect();
            row[2] = row[2].clone().style(Style::new().fg(color));
            Row::new(row)
        });
        let table = Table::new(body, widths)
            .header(Row::new(COLUMNS).style(Style::new().add_modifier(Modifier::BOLD)))
            .column_spacing(2)
            .block(Block::new().borders(Borders::TOP).title(" workers "));
        frame.render_widget(table, area);
    }
}

/// Holds the terminal in raw mode on the alternate screen; puts it back when dropped, and
/// before a panic's message is printed.
struct TerminalGuard;

/// Set once the terminal was put back, so that it is done once.
static RESTORED: AtomicBool = AtomicBool::new(false);

impl TerminalGuard {
    /// Raw mode, the alternate screen, no cursor; a panic hook that restores first.
    fn enter() -> Result<TerminalGuard, CliError> {
        let failed =
            |e: std::io::Error| CliError::Runtime(format!("cannot set up the terminal: {e}"));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        RESTORED.store(false, Ordering::SeqCst);
        terminal::enable_raw_mode().map_err(failed)?;
        // From here on, dropping the guard puts back whatever was changed.
        let guard = TerminalGuard;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide,
            terminal::Clear(terminal::ClearType::All)
        )
        .map_err(failed)?;
        Ok(guard)
    }

    /// A ratatui terminal on stdout.
    fn terminal(&self) -> Result<Terminal<CrosstermBackend<Stdout>>, CliError> {
        Terminal::new(CrosstermBackend::new(std::io::stdout()))
            .map_err(|e| CliError::Runtime(format!("cannot set up the terminal: {e}")))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Raw mode off, the main screen back, the cursor shown; errors (a terminal gone) ignored.
fn restore() {
    if RESTORED.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout();
    let _ = execute!(out, terminal::LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(interval("2"), Ok(Duration::from_secs(2)));
        assert!(interval("50ms").unwrap_err().contains("at least 100ms"));
        assert!(interval("0").is_err());
        assert!(interval("soon").is_err());
    }

    #[test]
    fn the_screen_shows_the_rows_and_the_keys() {
        use forkline::control::SlotStatus;
        use forkline::{Mode, WorkerState};
        use ratatui::backend::TestBackend;
        let target = Target::new(Some("web"), None).unwrap();
        let mut app = App::new(target, Duration::from_millis(500));
        let mut worker = SlotStatus::default();
        worker.pid = Some(4321);
        worker.state = Some(WorkerState::Ready);
        worker.connections = 5;
        let mut status = Status::default();
        status.name = Some("web".into());
        status.pid = 42;
        status.mode = Mode::Proxy;
        status.uptime_secs = 7.0;
        status.target = 1;
        status.ready = 1;
        status.addresses = vec!["127.0.0.1:1".into()];
        status.workers = vec![worker];
        app.status(Poll::Status(status));
        app.say(false, "scale refused: cannot scale to 0: at least 1 worker");
        let mut terminal = Terminal::new(TestBackend::new(120, 20)).unwrap();
        terminal.draw(|f| app.draw(f)).unwrap();
        let screen: Vec<String> = {
            let buffer = terminal.backend().buffer();
            (0..buffer.area.height)
                .map(|y| {
                    (0..buffer.area.width)
                        .map(|x| buffer[(x, y)].symbol().to_string())
                        .collect::<String>()
                })
                .collect()
        };
        let text = screen.join("\n");
        assert!(
            text.contains("web: primary pid 42, proxy mode, 1/1 workers ready"),
            "{text}"
        );
        assert!(text.contains("reload: idle"), "{text}");
        let row = screen
            .iter()
            .find(|l| l.contains("4321"))
            .unwrap_or_else(|| panic!("{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["0", "4321", "ready", "-", "0", "5", "0", "0", "-", "-"]
        );
        assert!(text.contains("scale refused: cannot scale to 0"), "{text}");
        assert!(text.contains("q quit   (every 500ms)"), "{text}");

        app.status(Poll::Gone);
        assert!(app.key(
            KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE),
            &mpsc::channel().0
        ));
    }
}
