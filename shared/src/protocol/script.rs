//! A Lua script of the protocol, sent as one command its first key routes.

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind, ToRedisArgs};

/// A Lua script sent by its hash (`EVALSHA`), and by its source (`EVAL`) once the node says it
/// does not know it (`NOSCRIPT`: a master just promoted or restarted; scripts are not
/// replicated). Both are one command with the script's keys, so the node that runs the script
/// is the one that loads it. `redis::Script` loads a missing script with `SCRIPT LOAD`, which a
/// cluster client sends to every master and fails when any of them does not answer: a master
/// that hangs would stop the scripts of every other.
pub(crate) struct KeyedScript {
    source: &'static str,
    hash: String,
}

impl KeyedScript {
    pub(crate) fn new(source: &'static str) -> Self {
        Self { source, hash: redis::Script::new(source).get_hash().to_owned() }
    }

    /// A call of the script, to which keys and then arguments are added.
    pub(crate) fn prepare_invoke(&self) -> ScriptCall<'_> {
        ScriptCall { script: self, keys: Vec::new(), args: Vec::new() }
    }
}

/// One call of a [`KeyedScript`]: its keys and arguments.
pub(crate) struct ScriptCall<'a> {
    script: &'a KeyedScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall<'_> {
    pub(crate) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The call as `EVALSHA` (`by_hash`) or `EVAL`, for a pipeline to carry.
    pub(crate) fn command(&self, by_hash: bool) -> Cmd {
        let mut command = redis::cmd(if by_hash { "EVALSHA" } else { "EVAL" });
        command.arg(if by_hash { self.script.hash.as_str() } else { self.script.source });
        command.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        command
    }

    /// Runs the call by hash, and by source where the node does not know the script.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> redis::RedisResult<T> {
        match self.command(true).query_async(conn).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command(false).query_async(conn).await
            }
            done => done,
        }
    }
}
